"""The one compiled part of fedlora: the optional AVX-512 IFMA modexp kernel.

Everything else is in pyproject.toml. The extension is optional: where it cannot be built (no C
compiler, not x86-64) the install goes on and fedlora uses OpenSSL's libcrypto or gmpy2 instead
(fedlora.crypto.make_backend says which, in one line).
"""

import platform

from setuptools import Extension, setup

extensions = []
if platform.machine().lower() in ("x86_64", "amd64"):
    extensions.append(
        Extension(
            "fedlora.crypto._mbexp",
            ["src/fedlora/crypto/_mbexp.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    )

setup(ext_modules=extensions)
