import sys

from tumorseg.cli import main

sys.exit(main())
