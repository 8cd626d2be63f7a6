"""Vertical and horizontal scoring shared by both sides: protocol, wire codecs, secure sums, evaluation."""
