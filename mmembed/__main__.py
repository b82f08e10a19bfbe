"""``python -m mmembed {fit,validate,test,predict} ...``."""

from mmembed.cli import main

if __name__ == "__main__":
    main()
