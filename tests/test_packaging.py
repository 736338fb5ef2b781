"""environment.yml and pyproject.toml must name the same packages with the same version specifiers."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXTRAS_IN_ENV = ("test", "notebooks")          # the GPU extra is pip-only (CUDA wheels), not in the conda env


def split_requirement(req):
    name, spec = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def environment_requirements(text):
    """Parse the two lists of environment.yml (conda and pip) without a YAML dependency."""
    conda, pip, section = {}, {}, None
    for line in text.splitlines():
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if re.match(r"^\S", line):
            section = line.rstrip(":")
            continue
        item = re.match(r"^(\s*)- (.*)$", line)
        if section != "dependencies" or not item:
            continue
        indent, value = len(item.group(1)), item.group(2).strip()
        if value == "pip:":
            continue
        if indent > 2:
            if value != "-e .":
                name, spec = split_requirement(value)
                pip[name] = spec
        else:
            name, spec = split_requirement(value.replace("=", "==", 1) if re.match(r"^python=\d", value) else value)
            conda[name] = spec
    return conda, pip


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS_IN_ENV:
        reqs += project["optional-dependencies"][extra]
    return dict(split_requirement(r) for r in reqs), project["requires-python"]


def test_environment_yml_matches_pyproject():
    conda, pip = environment_requirements((ROOT / "environment.yml").read_text())
    wanted, requires_python = pyproject_requirements()
    python = conda.pop("python")
    conda.pop("pip")
    in_env = {**conda, **pip}
    assert sorted(in_env) == sorted(wanted), (
        f"only in environment.yml: {sorted(set(in_env) - set(wanted))}; "
        f"only in pyproject.toml: {sorted(set(wanted) - set(in_env))}")
    mismatched = {k: (in_env[k], wanted[k]) for k in wanted if in_env[k] != wanted[k]}
    assert not mismatched, f"version specifiers differ (environment.yml, pyproject.toml): {mismatched}"
    assert python == "==3.11" and requires_python == ">=3.11"


def test_torch_pinned_in_test_extra():
    wanted, _ = pyproject_requirements()
    assert wanted["torch"] == "==2.13.0", "a looser torch pin pulls several GB of CUDA wheels"


def test_parser_sees_a_disagreement():
    conda, pip = environment_requirements("dependencies:\n  - numpy>=2\n  - pip:\n      - torch==2.0\n")
    assert conda == {"numpy": ">=2"} and pip == {"torch": "==2.0"}
