"""python-for-android recipe for hnswlib 0.8.0 (C++ extension, pybind11 + numpy headers).

hnswlib's setup.py adds ``-march=native`` unless ``HNSWLIB_NO_NATIVE`` is set: on a build host that
flag targets the host CPU (x86-64) and breaks the arm64 cross-compile, so it is always set here. It also
compiles with ``-fopenmp``, and since NDK r21 OpenMP links as a shared ``libomp.so`` that python-for-android
does not package (``import hnswlib`` would fail and search fall back to NumPy): ``-static-openmp`` links it in.
"""
from pythonforandroid.recipe import PyProjectRecipe


class HnswlibRecipe(PyProjectRecipe):
    name = "hnswlib"
    version = "0.8.0"
    url = "https://files.pythonhosted.org/packages/source/h/hnswlib/hnswlib-{version}.tar.gz"
    site_packages_name = "hnswlib"
    depends = ["numpy", "pybind11", "setuptools"]
    hostpython_prerequisites = ["pybind11", "numpy"]
    need_stl_shared = True

    def get_recipe_env(self, arch, **kwargs):
        env = super().get_recipe_env(arch, **kwargs)
        env["HNSWLIB_NO_NATIVE"] = "1"
        flags = " -I" + self.ctx.python_recipe.include_root(arch.arch)
        env["CFLAGS"] = env.get("CFLAGS", "") + flags
        env["CPPFLAGS"] = env.get("CPPFLAGS", "") + flags
        env["LDFLAGS"] = env.get("LDFLAGS", "") + " -static-openmp"
        return env


recipe = HnswlibRecipe()
