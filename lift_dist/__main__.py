from lift_dist.cli import main

raise SystemExit(main())
