from fedlora.cli import main

raise SystemExit(main())
