from msearchctl.fast import main

main()
