"""Chunked stacks on disk: a Zarr group chunked along the galaxy axis, with a manifest.

A **stack store** lives at a URL: a local path (a directory ``NAME.zarr``), a ``file://``
URL, or any URL an installed fsspec filesystem understands (``s3://`` with s3fs,
``gs://`` with gcsfs, ``hdfs://`` with pyarrow, ...). It holds

- one Zarr array (Zarr format 2, readable by zarr-python 2 and 3 and other Zarr
  libraries) per stack, among ``images``, ``psfs``, ``truth``, ``primal``, ``dual`` (and
  any other name, e.g. the ``clean`` and ``noisy_snr{S}`` stacks of a simulation), each
  chunked along axis 0 only — the galaxy axis — so that a worker reads the galaxies of its
  block and nothing else; ``psfs`` may instead be one shared 2-D PSF (a single chunk);
- ``galdecon.json``, the manifest, written last: the format and its version, for each
  array its shape, dtype, chunk length and a SHA-256 per chunk (of the chunk's galaxies as
  raw little-endian C-order bytes, so independent of the Zarr codecs), and the provenance
  (command, galdecon version, time of creation, source files and their SHA-256, a
  free-form ``run`` dict).

A store without its manifest is incomplete and is refused by :func:`open_store`. Locally,
:func:`create_store` writes into a temporary sibling directory ``.NAME.zarr.tmp-XXXX`` and
:meth:`StoreWriter.finalize` renames it onto ``NAME.zarr``, so a failed write never leaves
anything under the final name, and ``overwrite=True`` replaces an old store only once the
new one is complete (with ``publish=False`` the finished store stays in its temporary
directory, for the caller to rename together with the other files of a run: a
:class:`~galdecon.data.outputset.OutputSet`). Object stores have no rename: a remote
store is written in place and is complete only when its manifest appears
(``overwrite=True`` deletes the old store, manifest first, before writing).

Structured arrays (a simulation's catalogue) are stored as their raw little-endian records,
``(n, itemsize)`` bytes, with the numpy dtype in the manifest.

zarr and fsspec are an optional extra (``pip install 'galdecon[chunked]'``), imported only
when a store is opened or written.

Examples
--------
>>> writer = create_store("stack.zarr")                          # doctest: +SKIP
>>> writer.create_array("images", images.shape, images.dtype, chunk=1000)  # doctest: +SKIP
>>> for start, stop in writer.chunk_bounds("images"):            # doctest: +SKIP
...     writer.write_block("images", start, images[start:stop])
>>> store = writer.finalize()                                    # doctest: +SKIP
>>> store.read("images", 2500, 3000).shape                       # doctest: +SKIP
(500, 41, 41)
"""
