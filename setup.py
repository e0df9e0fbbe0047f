"""Installs the repository's top-level folders under one namespace: model/ -> patchrank.model, etc."""

from setuptools import find_packages, setup

ROOTS = ("model", "pipeline", "actors", "deploy", "configs")
packages = ["patchrank"]
package_dir = {"patchrank": "patchrank"}
for root in ROOTS:
    package_dir[f"patchrank.{root}"] = root
    packages += [f"patchrank.{root}"] + [f"patchrank.{root}.{p}" for p in find_packages(root)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"patchrank.configs": ["*.json"], "patchrank.deploy": ["*.yaml"]},
)
