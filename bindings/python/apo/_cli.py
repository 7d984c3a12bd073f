"""The ``apo`` console script of a pip install: runs the command-line tool installed in the
package (apo/bin/apo), with the reference models installed beside it as the default and the
torch package's libraries on the loader's path (torch may live in another site-packages, as in a
venv made with --system-site-packages)."""

import importlib.util
import os
import pathlib
import sys


def main() -> None:
    package = pathlib.Path(__file__).parent
    tool = package / "bin" / "apo"
    if not tool.exists():
        sys.exit("apo: this installation has no command-line tool (built with APO_BUILD_CLI=OFF)")
    env = dict(os.environ)
    if "APO_REFERENCE_MODELS" not in env and (package / "reference").is_dir():
        env["APO_REFERENCE_MODELS"] = str(package / "reference")
    torch = importlib.util.find_spec("torch")
    if torch is not None and torch.submodule_search_locations:
        torch_lib = pathlib.Path(list(torch.submodule_search_locations)[0]) / "lib"
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(torch_lib), env.get("LD_LIBRARY_PATH")) if p)
    os.execve(tool, [str(tool), *sys.argv[1:]], env)
