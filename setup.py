"""The optional C n-gram counter; everything else about the package is in pyproject.toml.

optional=True: where no C compiler is found the install still succeeds, and the featurizer
uses its numpy path (see router/features.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("router._ngrams", ["router/_ngrams.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
