"""fastlt: a data-pipeline-centric trainer for long-tailed image recognition."""

__version__ = "0.1.0"


def _check_layout() -> None:
    """``kernels/`` and ``pipelines/`` sit beside ``fastlt/`` and are installed as ``fastlt.kernels`` and
    ``fastlt.pipelines`` (pyproject's package-dir). With two checkouts on one machine, ``fastlt`` can be found
    on ``sys.path`` in one while the installed mapping serves the sub-packages from the other: refuse that
    instead of mixing code silently. Finding the specs imports nothing."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for sub in ("kernels", "pipelines"):
        spec = importlib.util.find_spec(f"fastlt.{sub}")
        where = Path(spec.origin).resolve().parent if spec and spec.origin else None
        if where != root / sub:
            raise ImportError(
                f"fastlt is loaded from {root / 'fastlt'} but fastlt.{sub} from {where}: two fastlt "
                f"checkouts are mixed. Install the one you run (`pip install -e {root}`) or run from the "
                "installed one."
            )


_check_layout()
