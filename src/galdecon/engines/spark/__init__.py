"""The Spark engine: blocks as RDD partitions, and getting a Spark session or cluster."""

from galdecon.engines.spark.engine import SparkEngine

__all__ = ["SparkEngine"]
