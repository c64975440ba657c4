"""Fixtures of the on-disk benchmark tests: tiny replicas of the datasets' formats
(tests/replicas.py builds them)."""

import types

import pytest

from replicas import (build_cars, build_cub, build_inshop, build_sop, build_vehicleid,
                      write_jpeg)


@pytest.fixture
def cub_root(tmp_path):
    return build_cub(tmp_path / "CUB_200_2011")


@pytest.fixture
def cars_root(tmp_path):
    return build_cars(tmp_path / "cars196")


@pytest.fixture
def sop_root(tmp_path):
    return build_sop(tmp_path / "Stanford_Online_Products")


@pytest.fixture
def inshop_root(tmp_path):
    return build_inshop(tmp_path / "inshop")


@pytest.fixture
def vehicleid_root(tmp_path):
    return build_vehicleid(tmp_path / "VehicleID_V1.0")


@pytest.fixture
def replicas():
    """The builders, for tests that need a variant of a layout."""
    return types.SimpleNamespace(cub=build_cub, cars=build_cars, sop=build_sop,
                                 inshop=build_inshop, vehicleid=build_vehicleid,
                                 jpeg=write_jpeg)
