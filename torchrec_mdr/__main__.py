import sys

from torchrec_mdr.cli import main

sys.exit(main())
