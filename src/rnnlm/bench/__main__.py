from rnnlm.bench.run import main

raise SystemExit(main())
