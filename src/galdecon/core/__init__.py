"""The maths: operators, the problem and the Condat–Vũ solver (numpy and scipy only)."""
