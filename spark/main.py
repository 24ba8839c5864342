"""The featurization job's entry file: the SparkApplication's mainApplicationFile and spark-submit's argument."""

import sys

from pomona.featurize.entry import main

if __name__ == "__main__":
    sys.exit(main())
