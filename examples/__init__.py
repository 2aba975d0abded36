"""Examples built on the library (nothing in rlad_megatron imports them): the quickstart (`make demo`) and the
small-scale comparison of the algorithms."""
