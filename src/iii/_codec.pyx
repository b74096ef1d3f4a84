# cython: language_level=3, annotation_typing=False
# The compiled twin of iii._codec_py: the same source, compiled by Cython, so the two cannot
# drift. annotation_typing=False keeps type hints as hints (no extra runtime checks), so both
# twins accept exactly the same arguments. Hand-tuned overrides belong here only where bench/
# shows they pay.
include "_codec_py.py"
