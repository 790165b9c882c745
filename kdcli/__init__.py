"""kdcli: a command-line toolkit for knowledge-distillation research.

The question it answers: how much does a student gain from a teacher's soft
labels over hard labels, as a function of the fraction κ of data it sees?
"""

__version__ = "0.1.0"
