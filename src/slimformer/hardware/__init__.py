"""What the CPU can do: its matrix/vector features and its measured peaks."""
