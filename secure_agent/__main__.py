from secure_agent.cli import main

raise SystemExit(main())
