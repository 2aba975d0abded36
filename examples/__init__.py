"""Examples built on the library (nothing in rlad_megatron imports them): the quickstart (`make demo`), the
small-scale comparison of the algorithms, and a reward and data schema of your own (custom_reward)."""
