from ratsweep.cli import main

main()
