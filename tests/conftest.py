import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from reference_data import FixtureSet, FixtureSet25, fixture_dirs  # noqa: E402


def pytest_generate_tests(metafunc):
    if "fixture_set" in metafunc.fixturenames:
        dirs = fixture_dirs()
        metafunc.parametrize("fixture_set", [FixtureSet(d) for d in dirs], ids=[d.name for d in dirs],
                             scope="module")
    if "fixture_set_25" in metafunc.fixturenames:
        dirs = fixture_dirs("2.5")
        metafunc.parametrize("fixture_set_25", [FixtureSet25(d) for d in dirs], ids=[d.name for d in dirs],
                             scope="module")
