from liquid_abt_drill.kraken_server.cli import main

raise SystemExit(main())
