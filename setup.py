"""Declares the compiled parts: ``iii._codec``, ``iii.engine._frames`` (picows' Cython API) and
``iii.modules._http_server_c`` (iii-http's server).

``III_BUILD_EXTENSION`` chooses how hard to try: ``auto`` (default) builds it when a compiler is
there and falls back to the pure-Python twin otherwise; ``required`` fails the install if the
build fails (CI uses this so a broken ``.pyx`` cannot hide); ``off`` skips it.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MODE = os.environ.get("III_BUILD_EXTENSION", "auto")


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler or Cython missing
            if MODE == "required":
                raise
            print(f"warning: extensions not built ({exc}); their pure-Python twins will be used")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if MODE == "required":
                raise
            print(f"warning: {ext.name} not built ({exc}); its pure-Python twin will be used")


#: The C under iii._codec: route_frame's string scan (one file per instruction set), UTF-8 checks.
SCAN_DIR = "src/iii/_c"
SCAN_SOURCES = [
    f"{SCAN_DIR}/{name}.c"
    for name in ("scan_dispatch", "scan_portable", "scan_sse2", "scan_avx2", "scan_neon", "utf8")
]


def extensions():
    if MODE == "off":
        return []
    try:
        from Cython.Build import cythonize

        return cythonize(
            [
                Extension(
                    "iii._codec",
                    ["src/iii/_codec.pyx", *SCAN_SOURCES],
                    include_dirs=[SCAN_DIR],
                    depends=[f"{SCAN_DIR}/scan.h", f"{SCAN_DIR}/scan_scalar.h"],
                ),
                # the pure twin's own source, made a cdef picows WSListener by _frames.pxd
                Extension(
                    "iii.engine._frames",
                    ["src/iii/engine/_frames_py.py"],
                    depends=["src/iii/engine/_frames.pxd", "src/iii/_codec.pxd"],
                ),
                # iii-http's server: its pure twin's source, compiled as it is
                Extension("iii.modules._http_server_c", ["src/iii/modules/_http_server_py.py"]),
            ],
            compiler_directives={"language_level": "3"},
            annotate=os.environ.get("III_CYTHON_ANNOTATE") == "1",
        )
    except Exception as exc:  # Cython missing or the .pyx does not compile
        if MODE == "required":
            raise
        print(f"warning: extensions not cythonized ({exc}); their pure-Python twins will be used")
        return []


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
