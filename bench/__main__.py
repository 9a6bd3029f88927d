import warnings

# eventlet (imported through nameko by the migrations) warns on import; the bench does not use it.
warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")

from bench.run import main  # noqa: E402

raise SystemExit(main())
