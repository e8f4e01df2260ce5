from exporter.drill.kraken_server.cli import main

raise SystemExit(main())
