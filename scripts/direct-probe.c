// CPU time (utime+stime of this thread) per GiB appended to a file, the way a journal
// appends: CHUNK bytes copied into a buffer and written every PERIOD_US, fdatasync every
// SYNC_MS (0: never). MODE: buffered (write(2) into the page cache), direct (O_DIRECT from a
// 4 KiB-aligned buffer, the partial last block rewritten by the next write), direct-trunc
// (the same + ftruncate to the exact length after each write), direct-mixed (whole blocks
// with O_DIRECT, the partial last block through a second, buffered descriptor).
//   gcc -O2 -o /tmp/direct-probe scripts/direct-probe.c
//   /tmp/direct-probe MODE FILE MIB CHUNK PERIOD_US SYNC_MS   e.g. direct /var/tmp/p 512 200000 2000 200
// (docs/PERFORMANCE.md, "Session 5, branch collect6").
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
static double cpu(void){struct rusage r;getrusage(RUSAGE_THREAD,&r);return r.ru_utime.tv_sec+r.ru_utime.tv_usec/1e6+r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
static double sys_(void){struct rusage r;getrusage(RUSAGE_THREAD,&r);return r.ru_stime.tv_sec+r.ru_stime.tv_usec/1e6;}
int main(int argc,char**argv){
  const char*mode=argv[1]; const char*path=argv[2]; size_t total=atol(argv[3])<<20; size_t chunk=atol(argv[4]); int period=atoi(argv[5]); int sync_ms=atoi(argv[6]);
  int direct=!strncmp(mode,"direct",6); int trunc_=!strcmp(mode,"direct-trunc"); int mixed=!strcmp(mode,"direct-mixed");
  int fd=open(path,O_CREAT|O_TRUNC|O_WRONLY|(direct?O_DIRECT:0),0644); if(fd<0){perror("open");return 1;} int fd2=open(path,O_WRONLY);
  size_t cap=chunk+8192; char*buf; if(posix_memalign((void**)&buf,4096,cap*2))return 1; memset(buf,'x',cap*2);
  char*src=malloc(chunk); memset(src,'y',chunk);
  size_t written=0; size_t tail=0; /* bytes of partial block in buf */ off_t base=0;
  double c0=cpu(), s0=sys_(); struct timespec t0; clock_gettime(CLOCK_MONOTONIC,&t0); long lastsync=0;
  struct timespec ts={0,period*1000L};
  while(written<total){
    if(direct){
      memcpy(buf+tail,src,chunk); size_t n=tail+chunk; size_t wn=(n+4095)&~4095UL; if(wn>n) memset(buf+n,0,wn-n);
      if(mixed){ size_t full=n&~4095UL; if(full&&pwrite(fd,buf,full,base)!=(ssize_t)full){perror("pwrite");return 1;} if(n>full&&pwrite(fd2,buf+full,n-full,base+full)!=(ssize_t)(n-full)){perror("pwrite2");return 1;} }
      else { if(pwrite(fd,buf,wn,base)!=(ssize_t)wn){perror("pwrite");return 1;} if(trunc_&&ftruncate(fd,base+n)){perror("ftruncate");return 1;} }
      size_t full=n&~4095UL; base+=full; tail=n-full; if(tail) memmove(buf,buf+full,tail);
    } else {
      memcpy(buf,src,chunk); if(write(fd,buf,chunk)!=(ssize_t)chunk){perror("write");return 1;}
    }
    written+=chunk;
    if(sync_ms){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);long ms=(t.tv_sec-t0.tv_sec)*1000+(t.tv_nsec-t0.tv_nsec)/1000000; if(ms-lastsync>=sync_ms){fdatasync(fd);lastsync=ms;}}
    if(period) nanosleep(&ts,NULL);
  }
  if(sync_ms) fdatasync(fd);
  double c=cpu()-c0, s=sys_()-s0; double gib=written/1073741824.0;
  printf("%s chunk=%zu sync=%dms: cpu %.3f s/GiB (sys %.3f)\n",mode,chunk,sync_ms,c/gib,s/gib);
  close(fd); unlink(path); return 0;
}
