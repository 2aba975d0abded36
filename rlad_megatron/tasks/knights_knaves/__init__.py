"""Knights and Knaves: logic and solver, generator and task, Logic-RL reward, data writer, and the compact form."""
