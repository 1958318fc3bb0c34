# rtcap's shim loader, put first on PYTHONPATH by `rtcap run`. It must not break any
# interpreter it lands in, including ones that cannot run the shim: those get one
# warning. It loads rtcap's recorder by file path, under a private name, so an app's own
# `recorder` module cannot shadow it, then hands over to any other sitecustomize.
import os
import sys


def _rtcap_load():
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(here)
    try:
        import importlib.util

        if sys.version_info < (3, 11):
            raise RuntimeError("Python %d.%d is older than 3.11" % sys.version_info[:2])
        spec = importlib.util.spec_from_file_location(
            "_rtcap_recorder", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["_rtcap_recorder"] = module
        spec.loader.exec_module(module)
        __import__("_rtcap_recorder.shim").shim.install_from_env()
    except Exception as e:
        sys.stderr.write(
            "rtcap: warning: this interpreter (%s) cannot load the rtcap shim (%s: %s); "
            "install rtcap in its environment, or record it with `rtcap proxy` instead\n"
            % (sys.executable, type(e).__name__, e)
        )
    return here


def _rtcap_chain(here):
    # Hand over to the sitecustomize this one hides, if there is one.
    ours = sys.modules.pop("sitecustomize", None)
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        import sitecustomize  # noqa: F401
    except ImportError as e:
        if getattr(e, "name", None) != "sitecustomize":
            raise
        sys.modules["sitecustomize"] = ours
    finally:
        if "sitecustomize" not in sys.modules:
            sys.modules["sitecustomize"] = ours
        sys.path[:] = [p for p in saved if os.path.abspath(p or os.curdir) != here]


_rtcap_chain(_rtcap_load())
