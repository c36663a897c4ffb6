from kbd.cli import main

main()
