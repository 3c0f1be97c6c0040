from otel_meter.cli import main

raise SystemExit(main())
