# SPDX-License-Identifier: MIT
# Round-trip time and throughput against payload size, ours vs baselines (PNG).
# Made by bench/compare, which writes the data file; by hand:
#   gnuplot -e "datafile='build/bench/results/payload.dat'; outfile='docs/bench/payload.png'" \
#           bench/plot.gp
# Data columns: bytes, then time in µs of ours, memcpy, four copies, thread pool, then GB/s of
# the same four. '?' marks a missing value.
if (!exists("datafile")) datafile = 'build/bench/results/payload.dat'
if (!exists("outfile")) outfile = 'docs/bench/payload.png'
if (!exists("subtitle")) subtitle = ''

set terminal pngcairo size 1200,560 font ",10" noenhanced
set output outfile
set datafile missing '?'
set logscale x 2
set xrange [45:130e6]
set xtics ("64B" 64, "512B" 512, "4KiB" 4096, "32KiB" 32768, "256KiB" 262144, \
           "2MiB" 2097152, "16MiB" 16777216, "64MiB" 67108864)
set grid xtics ytics mytics lc rgb "#dddddd"
set key below horizontal maxcols 2 box
set style data linespoints

ours = "Pool::submit echo (ours)"
memcpy = "one memcpy (in-process)"
four = "4 memcpy through shm, 2 processes"
threads = "std::thread pool (moves: near-zero copy)"

set multiplot layout 1,2 title "multicore: std::vector<char> round trip vs payload size".(subtitle eq '' ? '' : "  (".subtitle.")")

set title "Round-trip time (lower is better)"
set ylabel "time per round trip"
set logscale y 10
set format y "%.0s%cs"
# data in µs: scale to seconds for the SI-prefixed axis
plot datafile using 1:($2*1e-6) title ours lw 2 pt 7 lc rgb "#c0392b", \
     ''       using 1:($4*1e-6) title four lw 1.5 pt 5 lc rgb "#2471a3", \
     ''       using 1:($3*1e-6) title memcpy lw 1.5 pt 9 lc rgb "#7f8c8d", \
     ''       using 1:($5*1e-6) title threads lw 1.5 pt 13 dt 2 lc rgb "#27ae60"

# The thread pool moves the vector (no copy): its "throughput" is meaningless, so only its
# time is drawn.
set title "Throughput (higher is better)"
set ylabel "payload bytes per second"
set format y "%.0s%cB/s"
plot datafile using 1:($6*1e9) title ours lw 2 pt 7 lc rgb "#c0392b", \
     ''       using 1:($8*1e9) title four lw 1.5 pt 5 lc rgb "#2471a3", \
     ''       using 1:($7*1e9) title memcpy lw 1.5 pt 9 lc rgb "#7f8c8d"

unset multiplot
