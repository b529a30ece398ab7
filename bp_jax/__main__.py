from bp_jax.cli import main

raise SystemExit(main())
