"""Build of the C extension ``tfyarn._native`` (see native/README.md).

Everything else about the package lives in pyproject.toml.
"""

from setuptools import setup

setup(ext_modules=[])
