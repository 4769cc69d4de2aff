from saelens_lite.cli import main

raise SystemExit(main())
