from escale.cli.daemon import main

raise SystemExit(main())
