import re
import tomllib

from conftest import REPO


def pins(lines) -> dict:
    found = {}
    for line in lines:
        match = re.match(r"^\s*\"?([A-Za-z0-9_.-]+)==([^\s\",]+)", line)
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def test_envs_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = pins((REPO / "envs" / "quantpipe.txt").read_text().splitlines())
    assert declared == env
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version) for version in env.values())


def test_peers_pins_match_the_peers_extra():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = pins(extra["optional-dependencies"]["peers"])
    env = pins((REPO / "envs" / "peers.txt").read_text().splitlines())
    assert declared == env and declared
    assert all(re.fullmatch(r"[0-9][0-9A-Za-z.+]*", version) for version in env.values())
