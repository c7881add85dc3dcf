from ssltk.cli import main

main()
