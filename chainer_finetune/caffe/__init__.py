"""Caffe model support: schema, reader, layers."""
