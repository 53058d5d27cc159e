from unsafe_concepts.cli import main

raise SystemExit(main())
