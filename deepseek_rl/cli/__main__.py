from deepseek_rl.cli import main

main()
