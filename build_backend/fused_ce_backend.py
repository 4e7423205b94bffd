"""PEP 517 build backend: setuptools' own, except that the build compiles against the torch installed in the
environment that runs pip, also under pip's default build isolation.

Why: a torch extension must be compiled against the torch it will be loaded beside (the C++ ABI and the
operator registry change between releases). An isolated build environment that installs its own torch downloads
a second one (several GB for a CUDA build) and produces a binary that does not match the user's. pip runs this
backend with the user's interpreter and only hides that interpreter's site-packages, so they are appended to
sys.path here: the isolated environment's setuptools still comes first. With `python -m build` (a separate
interpreter) there is no installed torch to find, and setup.py stops at once with instructions.
"""

import os
import site
import sys
import sysconfig

from setuptools import build_meta as _setuptools_backend


def _interpreter_site_dirs():
    dirs = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    dirs += site.getsitepackages()
    user_site = site.getusersitepackages()  # pip sets PYTHONNOUSERSITE: a `pip install --user` torch is found here
    if isinstance(user_site, str):
        dirs.append(user_site)
    return dirs


def _expose_installed_torch():
    for path in _interpreter_site_dirs():
        if os.path.isdir(path) and path not in sys.path:
            site.addsitedir(path)  # appends (after the build environment), and reads .pth files


_expose_installed_torch()

# Every hook is setuptools'; they run setup.py in this process, which now sees the installed torch.
get_requires_for_build_wheel = _setuptools_backend.get_requires_for_build_wheel
get_requires_for_build_sdist = _setuptools_backend.get_requires_for_build_sdist
get_requires_for_build_editable = _setuptools_backend.get_requires_for_build_editable
prepare_metadata_for_build_wheel = _setuptools_backend.prepare_metadata_for_build_wheel
prepare_metadata_for_build_editable = _setuptools_backend.prepare_metadata_for_build_editable
build_wheel = _setuptools_backend.build_wheel
build_sdist = _setuptools_backend.build_sdist
build_editable = _setuptools_backend.build_editable

__all__ = [name for name in dir() if name.startswith(("get_requires", "prepare_metadata", "build_"))]
