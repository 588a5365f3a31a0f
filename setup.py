"""Packaging: hdkd/ plus the Triton kernels of kernels/ installed as hdkd.kernels."""
from setuptools import find_packages, setup

packages = find_packages(include=["hdkd", "hdkd.*"]) + ["hdkd.kernels"]

setup(packages=packages, package_dir={"hdkd.kernels": "kernels"})
