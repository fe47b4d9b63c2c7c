from secure_audit.cli import main

raise SystemExit(main())
