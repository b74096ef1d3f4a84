# cython: language_level=3
# The compiled twin of iii._codec_py: the same source, compiled by Cython (one source, so the
# two cannot drift). Hand-tuned overrides belong here only where bench/ shows they pay.
include "_codec_py.py"
