from genmodels.cli import main

raise SystemExit(main())
