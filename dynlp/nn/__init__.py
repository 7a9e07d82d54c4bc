"""Neural network builders over dynlp expressions: recurrent (LSTM, GRU, Elman, bidirectional),
Tree-LSTM, MLP, embeddings and a character encoder, with DyNet's names and semantics.
Must not import dynlp.data or recipes.
"""

from .layers import MLP, CharacterEncoder, Embedding, LossTerm
from .rnn import (BiRNNBuilder, GRUBuilder, LSTMBuilder, RecurrentBuilder, RNNState,
                  SimpleRNNBuilder)
from .treelstm import TreeLSTMBuilder, TreeState

__all__ = ["LSTMBuilder", "GRUBuilder", "SimpleRNNBuilder", "BiRNNBuilder", "RecurrentBuilder",
           "RNNState", "TreeLSTMBuilder", "TreeState", "MLP", "Embedding", "CharacterEncoder",
           "LossTerm"]
