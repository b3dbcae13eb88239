"""vLLM's parser accepts its many flags; the stand-in keeps the ones it reads and ignores the rest."""

import argparse


class FlexibleArgumentParser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):  # argparse's own signature
        return self.parse_known_args(args, namespace)[0]
