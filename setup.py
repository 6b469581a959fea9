"""ament_python package geoloc_ros: also a plain pip-installable Python package (pip install -e .)."""

from glob import glob
from os.path import isfile

from setuptools import find_packages, setup

package_name = "geoloc_ros"


def files(pattern):
    """The regular files matching `pattern` (a map folder may hold a git-ignored cache directory)."""
    return [f for f in glob(pattern, recursive=True) if isfile(f)]


setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=["geoloc_ros", "geoloc_ros.*"]),
    package_data={"geoloc_ros.model": ["recipes/*.yaml"]},  # training recipes, read by model.config.load_recipe
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", files("launch/*.py")),
        ("share/" + package_name + "/config", files("config/*.yaml") + files("config/*.xml")),
        ("share/" + package_name + "/maps/nordland_demo", files("maps/nordland_demo/*")),
    ],
    install_requires=["setuptools"],
    extras_require={"ray": ["ray[data]==2.60.0"]},  # geoloc map build --engine ray (requirements-ray.txt)
    zip_safe=False,
    maintainer="geoloc_ros maintainers",
    maintainer_email="maintainers@geoloc-ros.dev",
    description="Visual place recognition for ROS 2: ProGEO encoder, FAISS map database, loop closures and GeoPose.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "vpr_node = geoloc_ros.vpr_node:main",
            "geoloc = geoloc_ros.cli:main",
            "pose_graph_node = geoloc_ros.slam.pose_graph_node:main",
        ],
    },
)
